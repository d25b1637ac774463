// The agents panel: who is working on what. Status, intent, task, branch and changed files come
// from agent.list and team.list; they change live with agent and session notifications.

import { h, replace } from "../dom.js";
import { ago, shortName } from "../format.js";
import { on, sortedAgents, state } from "../state.js";

function filesOf(a) {
  // file_changes (with line counts) when git context has them, else plain path lists.
  if (a.file_changes && a.file_changes.length) {
    return a.file_changes.map((f) => ({
      path: f.path, note: [f.status, f.additions || f.deletions ? `+${f.additions || 0} −${f.deletions || 0}` : ""]
        .filter(Boolean).join(" "),
    }));
  }
  const paths = new Set([...(a.changed_files || []), ...(a.uncommitted_files || [])]);
  return [...paths].map((path) => ({ path, note: (a.uncommitted_files || []).includes(path) ? "uncommitted" : "" }));
}

function row(label, value) {
  if (value === null || value === undefined || value === "") return null;
  return [h("dt", null, label), h("dd", null, value)];
}

export function agentCard(a) {
  const files = filesOf(a);
  const active = a.status === "active";
  const titleId = `agent-${a.agent_id}`;
  const commits = typeof a.unmerged_commits === "number" ? a.unmerged_commits
    : (a.unmerged_commits || []).length;
  return h("article", { class: `agent-card ${active ? "active" : "offline"}`, "aria-labelledby": titleId, dataset: { agent: a.agent_id } },
    h("h2", { id: titleId },
      h("span", { class: `dot ${active ? "on" : "off"}`, "aria-hidden": "true" }),
      "@" + shortName(a.agent_id),
      h("span", { class: `status ${active ? "on" : "off"}` }, active ? "active" : "offline")),
    a.display ? h("p", { class: "muted display" }, a.display) : null,
    h("dl", null,
      row("Role", `${a.role} @ ${a.module}`),
      row("Intent", a.intent || (active ? h("span", { class: "muted" }, "not set") : null)),
      row("Task", a.current_task),
      row("Branch", a.branch ? [a.branch, commits ? ` (${commits} commit${commits === 1 ? "" : "s"} ahead)` : ""] : null),
      row("Changed files", files.length ? h("details", null,
        h("summary", null, `${files.length} file${files.length === 1 ? "" : "s"}`),
        h("ul", { class: "files" }, files.slice(0, 200).map((f) => h("li", null, h("code", null, f.path),
          f.note ? h("span", { class: "muted" }, " " + f.note) : null)))) : null),
      row(active ? "Last active" : "Last seen", a.last_seen_at || a.last_seen
        ? h("time", { datetime: a.last_seen_at || a.last_seen, title: a.last_seen_at || a.last_seen }, ago(a.last_seen_at || a.last_seen))
        : null),
      row("Inbox", h("a", { href: `/inbox/${encodeURIComponent(a.agent_id)}` },
        typeof a.inbox_unread === "number"
          ? `${a.inbox_unread.toLocaleString()} unread of ${a.inbox_total.toLocaleString()}` : "open"))));
}

export function agentsView() {
  const filter = h("input", { type: "search", id: "agent-filter", placeholder: "name, role, branch, file…" });
  const onlyActive = h("input", { type: "checkbox", id: "only-active" });
  const grid = h("div", { class: "agent-grid" });
  const summary = h("p", { class: "muted" });
  let off = [];
  let timer = null;

  function render() {
    const q = filter.value.trim().toLowerCase();
    const all = sortedAgents();
    const shown = all.filter((a) => (!onlyActive.checked || a.status === "active") && (!q || [a.agent_id, a.role,
      a.module, a.display, a.intent, a.current_task, a.branch, ...filesOf(a).map((f) => f.path)]
      .some((v) => v && String(v).toLowerCase().includes(q))));
    const activeCount = all.filter((a) => a.status === "active").length;
    summary.textContent = `${activeCount} of ${all.length} agent${all.length === 1 ? "" : "s"} active` +
      (shown.length !== all.length ? `; showing ${shown.length}.` : ".");
    if (!all.length) {
      replace(grid, h("p", null, "No agents yet. An agent joins with ",
        h("code", null, "thrum quickstart --name NAME --role ROLE --module MODULE"), "."));
      return;
    }
    // A refresh must not close what the person opened or steal the focus from them.
    const open = new Set([...grid.querySelectorAll("details[open]")].map((d) => d.closest("[data-agent]").dataset.agent));
    const focused = grid.contains(document.activeElement) ? document.activeElement : null;
    const focusAgent = focused && focused.closest("[data-agent]") ? focused.closest("[data-agent]").dataset.agent : null;
    const focusTag = focused ? focused.tagName : null;
    replace(grid, shown.map(agentCard));
    for (const card of grid.querySelectorAll("[data-agent]")) {
      if (open.has(card.dataset.agent)) card.querySelector("details").open = true;
      if (card.dataset.agent === focusAgent) {
        const target = card.querySelector(focusTag === "SUMMARY" ? "summary" : "a");
        if (target) target.focus();
      }
    }
  }

  return {
    title: "Agents",
    heading: "Agents",
    intro: "Who is working on what: status, intent, task, branch and changed files.",
    mount(container) {
      container.append(
        h("div", { class: "toolbar" },
          h("div", { class: "field" }, h("label", { for: "agent-filter" }, "Filter"), filter),
          h("label", { class: "check" }, onlyActive, " Active only"),
          summary),
        grid);
      filter.addEventListener("input", render);
      onlyActive.addEventListener("change", render);
      render();
      off = [on("agents", render)];
      // "5 min ago" goes stale by itself.
      timer = setInterval(render, 60000);
    },
    destroy() {
      off.forEach((f) => f());
      clearInterval(timer);
    },
  };
}
