from screens import page_neighbours

page_neighbours()
