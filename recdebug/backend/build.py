"""One RETURNN network in a tf.Graph and Session of its own, on one device: what every build of both front ends
shares (the language's run, trace, train and step builds; a config's builds and its step build). Its session calls
can be interrupted: Ctrl-C closes the session, which cancels TensorFlow's call, and the next call opens a fresh one
with the parameters loaded again (``restore``)."""
from __future__ import annotations

import contextlib
import threading


class Build:
    """A subclass makes ``network`` inside ``scope()``, lists its own ``extra_variables`` (initialized with the
    network's), calls ``open()`` for its session and loads its parameters in ``restore()``."""

    device = "cpu"
    extra_variables: list = []
    session = None
    network = None

    @contextlib.contextmanager
    def scope(self):
        """Inside this build's graph, on its device."""
        import tensorflow as tf

        if getattr(self, "tf_graph", None) is None:
            self.tf_graph = tf.Graph()
        with self.tf_graph.as_default(), tf.device("/gpu:0" if self.device == "gpu" else "/cpu:0"):
            yield

    def open(self):
        """A session on this build's graph with every variable initialized (the parameters: ``restore``)."""
        import tensorflow as tf

        with self.scope():
            init_extra = tf.compat.v1.variables_initializer(self.extra_variables)
        session = tf.compat.v1.Session(graph=self.tf_graph, config=tf.compat.v1.ConfigProto(allow_soft_placement=True))
        with self.scope():
            self.network.initialize_params(session)
        session.run(init_extra)
        self.session = session
        return session

    def restore(self):
        """Load the parameters into a fresh session (a subclass: from where it keeps them)."""

    def live_session(self):
        """The session; after an interrupted call closed it, a fresh one with the parameters loaded again."""
        if self.session is None:
            self.open()
            self.restore()
        return self.session

    def run_session(self, fetches, feed_dict):
        """``session.run`` in a worker thread, waited for in short slices: Python raises KeyboardInterrupt only
        between its own steps, never inside TensorFlow's call. On Ctrl-C the session is closed, which cancels
        TensorFlow's call (there is no other way to stop it), and the next call opens a fresh session. The
        closing runs in the background: TensorFlow may take a second to reach a point where it can cancel."""
        session = self.live_session()
        outcome = {}

        def work():
            try:
                outcome["value"] = session.run(fetches, feed_dict=feed_dict)
            except BaseException as e:  # handed to the caller's thread
                outcome["error"] = e

        worker = threading.Thread(target=work, name="recdebug-session-run", daemon=True)
        try:
            worker.start()
            while worker.is_alive():
                worker.join(0.05)
        except KeyboardInterrupt:
            self.session = None
            threading.Thread(target=session.close, name="recdebug-session-close", daemon=True).start()
            raise
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def close(self):
        """Free the session; RETURNN's global batch dim forgets this build's graph."""
        if self.session is not None:
            self.session.close()
            self.session = None
        from returnn.tensor import batch_dim

        # RETURNN keeps the last build's batch info on its global batch dim, and with it that build's tf.Graph
        built = self.network.extern_data.get_batch_info(allow_none=True) if self.network is not None else None
        if built is not None and batch_dim.batch is not None and batch_dim.batch.get_global_base() is built:
            batch_dim.batch = None
