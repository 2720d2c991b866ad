from screens import page_symmetry

page_symmetry()
