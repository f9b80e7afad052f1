SELECT public.users.ssn, users.name FROM public.users
