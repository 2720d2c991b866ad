from screens import page_query

page_query()
