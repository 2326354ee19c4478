"""Emission: a Graph of the language -> a RETURNN net dict, extern data and the map back to the user's objects and
lines (``netdict``); a loop's unit as a net of one step (``stepnet``)."""
