SELECT t.a, ds.t.b, `proj`.ds.t.c FROM `proj`.ds.t
