-- backslashes in strings are plain characters with standard_conforming_strings on
SELECT 'a\'; DELETE FROM t; --'
