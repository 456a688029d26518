// taglist.js — the tag filter: a text filter, "all" / "none" (acting on the
// tags the filter shows), and a virtualised list of checkboxes, so a model
// with thousands of parameter tensors costs only the rows in view (ROW_H
// pixels each, OVERSCAN extra above and below). onChange(selected tags in
// list order) fires after a short debounce, so a burst of clicks fetches once.

import { debounce, el } from "./util.js";

const ROW_H = 24;
const OVERSCAN = 8;

export class TagList {
  constructor(root, { onChange }) {
    this.onChange = onChange;
    this.tags = [];
    this.shown = [];
    this.selected = new Set();
    this.colors = () => "";
    this.filter = "";
    this.input = el("input.filter", {
      type: "search",
      id: "tag-filter",
      placeholder: "filter tags (substring)",
      "aria-label": "filter tags",
      oninput: () => {
        this.filter = this.input.value.trim().toLowerCase();
        this.applyFilter();
      },
    });
    this.count = el("span.muted", { id: "tag-count" });
    this.spacer = el("div.vspacer");
    this.viewport = el("div.vlist", { id: "tag-list", role: "list", onscroll: () => this.renderRows() }, this.spacer);
    this.fire = debounce(() => this.onChange(this.tags.filter((t) => this.selected.has(t))), 120);
    root.append(
      this.input,
      el(
        "div.row",
        null,
        el("button", { id: "tags-all", title: "select every tag the filter shows", onclick: () => this.setShown(true) }, "all"),
        el("button", { id: "tags-none", title: "deselect every tag the filter shows", onclick: () => this.setShown(false) }, "none"),
        el("span.spacer"),
        this.count,
      ),
      this.viewport,
    );
  }

  /** The run's tags (sorted), the selection, and tag → colour. */
  setTags(tags, selected, colors) {
    this.tags = tags;
    this.selected = new Set(selected);
    this.colors = colors;
    this.applyFilter();
  }

  /** Add tags that appeared since (a new stream); not selected. */
  addTags(tags) {
    this.tags = tags;
    this.applyFilter();
  }

  select(tag, on = true) {
    if (on) this.selected.add(tag);
    else this.selected.delete(tag);
    this.renderRows();
    this.updateCount();
    this.fire();
  }

  setShown(on) {
    for (const t of this.shown) {
      if (on) this.selected.add(t);
      else this.selected.delete(t);
    }
    this.renderRows();
    this.updateCount();
    this.fire();
  }

  applyFilter() {
    const f = this.filter;
    this.shown = f ? this.tags.filter((t) => t.toLowerCase().includes(f)) : this.tags;
    this.spacer.style.height = this.shown.length * ROW_H + "px";
    this.updateCount();
    this.renderRows(true);
  }

  updateCount() {
    const n = this.tags.filter((t) => this.selected.has(t)).length;
    this.count.textContent = `${n}/${this.tags.length} selected` + (this.filter ? ` · ${this.shown.length} shown` : "");
  }

  /** Only the rows in view (plus overscan) exist in the DOM. */
  renderRows(force = false) {
    const top = this.viewport.scrollTop;
    const h = this.viewport.clientHeight || 320;
    const a = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const b = Math.min(this.shown.length, Math.ceil((top + h) / ROW_H) + OVERSCAN);
    if (!force && this.window && this.window[0] === a && this.window[1] === b && !this.dirty) {
      // Same rows: refresh the checkboxes only.
      for (const row of this.viewport.querySelectorAll(".tagrow")) {
        row.querySelector("input").checked = this.selected.has(row.dataset.tag);
      }
      return;
    }
    this.window = [a, b];
    for (const row of this.viewport.querySelectorAll(".tagrow")) row.remove();
    for (let i = a; i < b; i++) {
      const tag = this.shown[i];
      const box = el("input", {
        type: "checkbox",
        checked: this.selected.has(tag),
        "aria-label": tag,
        onchange: (e) => this.select(tag, e.target.checked),
      });
      const row = el(
        "label.tagrow",
        { role: "listitem", dataset: { tag }, title: tag },
        box,
        el("span.swatch", { style: `background:${this.colors(tag)}` }),
        el("span.tagname", null, tag),
      );
      row.style.top = i * ROW_H + "px";
      this.viewport.append(row);
    }
  }

  /** Colours changed (theme): redraw the swatches. */
  recolor(colors) {
    this.colors = colors;
    this.renderRows(true);
  }
}
