"""Views: the debugger widget and its browser modules' Python side, plots and pictures. They read records and the
stepper protocol and never build a net."""
