SELECT id, name
FROM public.t;
