"""Circuit Desk front ends: the Qt workbench and the ``circuitdesk`` command line."""
