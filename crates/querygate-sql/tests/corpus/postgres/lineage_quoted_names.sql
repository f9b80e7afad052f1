SELECT "Users"."SSN", "Users".name FROM "Users" WHERE "Users".Id = 1
