"""Reference solutions of the self-contained assignments (5-7): `minisink assignment new N DIR` stubs these out
for the skeleton, and `--solution` writes them as they are. The graders compare against minisink/reference.py, not
against these files."""
