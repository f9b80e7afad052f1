SELECT * FROM (SELECT product, quarter, amount FROM ds.quarterly) PIVOT (SUM(amount) FOR quarter IN ('Q1', 'Q2'))
