"""The debugger's search part: the beam tree of the shown sequence and the hypothesis the views are drawn along
(``select_hypothesis``), for a search trace and for a live search (new hypotheses after every move)."""
from __future__ import annotations

from ..language.errors import RecDebugError


class SearchControl:
    """Mixed into the Debugger: its ``beams``, ``beam_tree`` and ``hypothesis``."""

    def _send_beams(self):
        """The beam tree of the current sequence; the best hypothesis of the last step selected."""
        bs, b = self.beams, self.sequence
        steps, _, beam = bs.shape
        nodes = [{"t": t, "k": k, "label": int(bs.labels[t, b, k]), "score": float(bs.scores[t, b, k]),
                  "src": int(bs.backpointers[t, b, k]), "ended": bool(bs.ended[t, b, k])}
                 for t in range(steps) for k in range(beam)]
        self.beam_tree.nodes = nodes
        if steps:
            last = min(steps - 1, bs.last_step(b))
            k = bs.best(b, last)
            self.beam_tree.best = self._drawn_path(last, k)
            self.select_hypothesis(last, k)
            return
        self.hypothesis, self._hyp_text = None, ""  # a live search before its first step
        with self.beam_tree.hold_sync():
            self.beam_tree.best = []
            self.beam_tree.path = []
            self.beam_tree.selected = [-1, -1]
        for view in self._active_views():
            self._send(view)

    def _drawn_path(self, t: int, k: int) -> list:
        """[step, slot] pairs of hypothesis k of step t, up to the step where it ended (the tree draws no
        EOS carried on after that)."""
        b = self.sequence
        slots = self.beams.path(t, b, k)
        end = self.beams.hypothesis(b, k, t)["end_step"]
        return [[s, slot] for s, slot in enumerate(slots) if end < 0 or s <= end]

    def _refresh_live_beams(self):
        """A live search moved (a step, a step back, an edit): new hypotheses, the best one shown."""
        st = self.stepper
        if self.beams.shape[0] == st.t and self._edits_seen == len(st.edits):
            return
        self._edits_seen = len(st.edits)
        self.beams = st.beams()
        self._send_beams()

    def select_hypothesis(self, t: int, k: int):
        """Show hypothesis k of step t: its path in the tree and its States along that path."""
        if self.beams is None:
            raise RecDebugError("select_hypothesis needs a search: a trace made with search=True, or a stepper of a "
                                "loop with rd.choice")
        b = self.sequence
        steps, _, beam = self.beams.shape
        if not (0 <= t < steps and 0 <= k < beam):
            raise RecDebugError(f"no hypothesis {k} of step {t}: {steps} steps of beam size {beam} so far")
        self.hypothesis = (int(t), int(k))
        if self.beam_tree.selected != [int(t), int(k)]:
            self.beam_tree.selected = [int(t), int(k)]
        self.beam_tree.path = self._drawn_path(int(t), int(k))
        hyp = self.beams.hypothesis(b, int(k), int(t))
        if self.trace is not None:
            self.breakpoint = ""
        self.diff_summary = ""
        ended = f", ended at t={hyp['end_step']}" if hyp["end_step"] >= 0 else ""
        self._hyp_text = f"drawn along hypothesis {k} at t={t}: labels {hyp['labels']}, score {hyp['score']:.4f}{ended}"
        for view in self._active_views():
            self._send(view)
        self._place_cursor(self.t)
