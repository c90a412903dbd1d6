-- A query that smuggles a second statement.
SELECT id
FROM public.t;
DELETE FROM public.t;
