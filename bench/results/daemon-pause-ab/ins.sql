\set uid random(1, 10000)
\set job random(1, 50000)
\set m random(0, 35)
\set nojob random(1, 5)
\if :nojob = 1
INSERT INTO app_charge (type, amount, month, user_id, job_id) VALUES ('hw', 12.34, (DATE '2026-11-01' - make_interval(months => :m))::date, :uid, NULL);
\else
INSERT INTO app_charge (type, amount, month, user_id, job_id) VALUES ('sw', 56.78, (DATE '2026-11-01' - make_interval(months => :m))::date, :uid, :job);
\endif
