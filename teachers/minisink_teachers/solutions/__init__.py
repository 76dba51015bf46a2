"""Reference solutions of assignments 5-8: `minisink assignment new N DIR --solution` copies them."""
