-- standard_conforming_strings off makes the server read backslashes in strings as escapes
SET standard_conforming_strings = off
