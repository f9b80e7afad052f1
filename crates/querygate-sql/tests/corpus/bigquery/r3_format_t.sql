SELECT FORMAT('%t', u) FROM ds.users u
