MERGE ds.target T USING ds.source S ON T.id = S.id
WHEN MATCHED AND S.deleted THEN DELETE
WHEN MATCHED THEN UPDATE SET email = S.email
WHEN NOT MATCHED THEN INSERT (id, email) VALUES (S.id, S.email)
