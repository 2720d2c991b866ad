from screens import page_interpolation

page_interpolation()
