"""minisink-teachers: what a teacher has and a student does not.

- solutions/: the reference solutions of assignments 5-8 (`minisink assignment new N DIR --solution` writes them;
  assignments 1-4 are minisink's own files);
- hidden.py: hidden checks, graded like the public ones, on inputs no skeleton or public check shows;
- ANSWERS.md: the answers to every assignment's written questions.

Install it where you grade, from the repository: `pip install ./teachers` (it needs minisink itself).
"""
