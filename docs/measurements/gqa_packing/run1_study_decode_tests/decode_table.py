import json, sys
recs = json.load(open(sys.argv[1]))["records"]
rows = {}
for r in recs:
    key = (f"B{r['B']} H{r['Hq']}/{r['Hkv']} Sq{r['Sq']} Sk{r['Sk']}", r["method"])
    rows.setdefault(key, {})[r["provider"]] = (1e3 * r["median_ms"] if r["median_ms"] else None, r["rel_l2"])
provs = ["fp8attn", "fp8attn-prequant", "sdpa-flash", "sdpa-cudnn", "cudnn-fp8", "sage1"]
print(f"{'shape':26s} {'method':10s}" + "".join(f"{p:>17s}" for p in provs))
for k, v in rows.items():
    print(f"{k[0]:26s} {k[1]:10s}" + "".join(f"{v[p][0]:9.1f} ({v[p][1]:.3f})" if p in v and v[p][0] else f"{'-':>17s}" for p in provs))
