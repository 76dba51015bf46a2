"""The skeletons of assignments 5-8, made from the teachers' reference solutions by skeleton.make_skeleton (the
solutions themselves are not part of minisink). Regenerate after changing a solution:

    python -m minisink_teachers.make_skeletons
"""
