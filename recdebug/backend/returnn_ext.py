"""A small extension of RETURNN's RecLayer: reading a nested rec layer's sub-layer from an enclosing loop.

Stock RETURNN builds an outer loop's templates without templates for ``"<inner rec>/<layer>"``; this adds them
(the inner layer's per-step template with the inner loop's axis in front), which is what a nested Loop's
stack/last need. The real layer comes from RETURNN's own ``RecLayer.get_sub_layer``.
"""
from __future__ import annotations


def _rec_sub_layer_template(cls, layer_name, parent_layer_kwargs):
    from returnn.tf.layers.base import InternalLayer
    from returnn.tf.layers.rec import _SubnetworkRecCell

    unit = parent_layer_kwargs.get("unit")
    if not isinstance(unit, _SubnetworkRecCell):
        return None
    template = unit.layer_data_templates.get(layer_name)
    if template is None or not template.is_output_layer():
        return None
    rec_out = cls.get_out_data_from_opts(**parent_layer_kwargs)
    out = template.output.copy_template().copy_add_dim_by_tag(rec_out.get_time_dim_tag(), unbroadcast=True, axis=0)
    out.name = f"{parent_layer_kwargs['name']}/{layer_name}"
    return out, InternalLayer, {}


def install():
    from returnn.tf.layers.rec import RecLayer

    if "get_sub_layer_out_data_from_opts" not in vars(RecLayer):
        RecLayer.get_sub_layer_out_data_from_opts = classmethod(_rec_sub_layer_template)
