"""The report's item explorer: every item of a task with each variant's prediction and p(gold), as data embedded
in the page and a small script of the report's own that sorts and filters it (no library, no network).

Dataset text never becomes markup: the data travels as JSON inside ``<script type="application/json">`` with
``<``, ``>`` and ``&`` written as ``\\u003c``, ``\\u003e``, ``\\u0026`` (so no ``</script>`` can end it early), and
the script puts text into cells with ``textContent`` only.
"""

from __future__ import annotations

import json
from typing import Any, Collection, Mapping, Sequence

from quantcal.store.database import Store
from quantcal.analysis.summary import run_predictions

#: Items per task embedded in the page (the rest are in items.parquet).
MAX_ITEMS = 3000
#: Characters of a prompt shown (its end, where the question is).
CONTEXT_CHARS = 600


def explorer_data(store: Store, tasks: dict[str, Sequence[str]], reference: str, normalization: str,
                  max_items: int = MAX_ITEMS, items: Mapping[str, Collection[str]] | None = None) -> dict[str, Any]:
    """Per task: the variants (reference first), and per item its text, gold answer and each variant's
    ``[prediction, p(gold)]``; items the reference scored, in dataset order, at most ``max_items``."""
    out: dict[str, Any] = {}
    for task, variants in tasks.items():
        names = [reference] + [v for v in variants if v != reference] if reference in variants else list(variants)
        per_variant, base = {}, []
        for name in names:
            preds, scored = run_predictions(store, name, task, normalization, (items or {}).get(task))
            per_variant[name] = {it.item_id: (int(preds.pred[i]), float(preds.probs[i, preds.labels[i]]))
                                 for i, it in enumerate(scored)}
            base = base or scored  # the first (the reference's) items give the rows
        shown = base[:max_items]
        texts = store.item_texts([it.item_hash for it in shown])
        rows = []
        for it in shown:
            context, choices = texts.get(it.item_hash, ("", []))
            rows.append({"id": it.item_id, "pos": it.position, "q": context[-CONTEXT_CHARS:], "choices": choices,
                         "gold": it.gold, "v": [list(per_variant[n].get(it.item_id, (None, None))) for n in names]})
        out[task] = {"variants": names, "items": rows, "total": len(base)}
    return out


def embed(data: dict[str, Any]) -> str:
    """JSON that is safe inside a ``<script type="application/json">`` element."""
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


#: The explorer's script: builds one table per task from the embedded data; sorting by any column, a text filter
#: and a row filter (flips, reference wrong). Text goes in with textContent only.
SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById("items-data").textContent);
  for (const [task, block] of Object.entries(data)) {
    const root = document.getElementById("explorer-" + block.slot);
    if (!root) continue;
    const names = block.variants, ref = 0;
    const rows = block.items.map(it => {
      const r = {it: it, flip: false, refWrong: it.v[ref][0] !== it.gold};
      names.forEach((n, j) => { if (j > 0 && it.v[j][0] !== null && it.v[j][0] !== it.v[ref][0]) r.flip = true; });
      return r;
    });
    const controls = document.createElement("div");
    const search = document.createElement("input");
    search.type = "search"; search.placeholder = "filter question text"; search.className = "explorer-search";
    const show = document.createElement("select"); show.className = "explorer-show";
    [["all", "all items"], ["flips", "prediction changed"], ["refwrong", "reference wrong"]].forEach(([v, t]) => {
      const o = document.createElement("option"); o.value = v; o.textContent = t; show.appendChild(o);
    });
    const count = document.createElement("span"); count.className = "muted explorer-count";
    controls.append(search, " ", show, " ", count);
    const table = document.createElement("table"); table.className = "explorer";
    const head = table.createTHead().insertRow();
    const columns = [["#", r => r.it.pos], ["question (end)", r => r.it.q], ["gold answer", r => r.it.choices[r.it.gold] || ""]];
    names.forEach((n, j) => {
      columns.push(["p(gold) " + n, r => r.it.v[j][1]]);
      if (j > 0) columns.push(["Δp(gold) " + n, r => (r.it.v[j][1] === null ? null : r.it.v[j][1] - r.it.v[ref][1])]);
    });
    columns.push(["flip", r => (r.flip ? 1 : 0)]);
    let sortKey = 0, sortDir = 1;
    columns.forEach(([label], k) => {
      const th = document.createElement("th"); th.textContent = label; th.className = "sortable"; th.dataset.col = k;
      th.addEventListener("click", () => { sortDir = sortKey === k ? -sortDir : 1; sortKey = k; draw(); });
      head.appendChild(th);
    });
    const body = table.createTBody();
    function fmt(v) { return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : (v === null ? "—" : String(v)); }
    function draw() {
      const needle = search.value.toLowerCase();
      const kept = rows.filter(r => (!needle || r.it.q.toLowerCase().includes(needle)) &&
        (show.value === "all" || (show.value === "flips" && r.flip) || (show.value === "refwrong" && r.refWrong)));
      const get = columns[sortKey][1];
      kept.sort((a, b) => { const x = get(a), y = get(b); return (x === y ? a.it.pos - b.it.pos : (x === null ? 1 : y === null ? -1 : (x < y ? -1 : 1) * sortDir)); });
      body.replaceChildren();
      for (const r of kept) {
        const tr = body.insertRow();
        columns.forEach(([, get2], k) => { const td = tr.insertCell(); td.textContent = fmt(get2(r)); if (k === 1 || k === 2) td.className = "text"; });
      }
      count.textContent = kept.length + " of " + rows.length + " items shown" + (block.total > rows.length ? " (" + block.total + " in items.parquet)" : "");
    }
    search.addEventListener("input", draw); show.addEventListener("change", draw);
    root.append(controls, table); draw();
  }
})();
"""
