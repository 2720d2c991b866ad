from screens import page_map

page_map()
