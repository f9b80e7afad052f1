FROM ds.users |> WHERE id = 1 |> SELECT ssn
