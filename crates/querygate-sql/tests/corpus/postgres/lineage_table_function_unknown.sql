SELECT * FROM my_tvf(1)
