SELECT lo_export(lo_import('/etc/passwd'), '/tmp/x')
