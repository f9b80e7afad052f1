SELEC nonsense FROM
