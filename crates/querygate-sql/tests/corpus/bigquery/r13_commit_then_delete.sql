-- attacks.md row 13: COMMIT; … smuggles a write after transaction control
COMMIT TRANSACTION; DELETE FROM ds.t WHERE true
