// The live feed: every message in the repository, newest first, as it happens.

import { h } from "../dom.js";
import { MessageList } from "../messages.js";
import { on } from "../state.js";

export function feedView(app) {
  const list = new MessageList({
    params: {}, label: "All messages, newest first", onReply: (m) => app.composer.setReply(m),
    empty: "No messages yet. Write the first one above.",
  });
  let off = [];
  return {
    title: "Live feed",
    heading: "Live feed",
    intro: "Every message in this repository, newest first. New ones appear as they are sent.",
    mount(container) {
      container.append(list.el);
      list.reload();
      off = [
        on("message", ({ kind, message }) => {
          if (list.live(message, kind) && kind === "created") app.announceMessage(message);
        }),
        on("ready", ({ reconnected }) => reconnected && list.reload()),
      ];
    },
    destroy() {
      off.forEach((f) => f());
      list.destroy();
    },
  };
}
