SET search_path TO evil, public
