-- a procedure may write its arguments: later reads of them are opaque
DECLARE x STRING;
CALL ds.p(x);
SELECT x
