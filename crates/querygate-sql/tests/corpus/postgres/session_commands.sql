SET extra_float_digits = 3; SHOW server_version; DISCARD ALL; SELECT current_user, version()
