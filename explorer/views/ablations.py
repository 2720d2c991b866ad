from screens import page_ablations

page_ablations()
