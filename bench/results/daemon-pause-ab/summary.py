import statistics as s, collections, sys
for f in sys.argv[1:]:
    d=collections.defaultdict(dict)
    for l in open(f):
        r,v,t=l.split(); d[r][v]=float(t)
    out=[f]
    for v in ['trig','daemon']:
        rs=[x[v]/x['none'] for x in d.values() if len(x)==3]
        out.append(f"{v} {s.median(rs):.3f} (n={len(rs)})")
    out.append(f"none {s.median(x['none'] for x in d.values() if 'none' in x):.0f}")
    print('  '.join(out))
