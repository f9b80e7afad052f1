SELECT v.column1 FROM (VALUES (1, 'a'), (2, 'b')) AS v
