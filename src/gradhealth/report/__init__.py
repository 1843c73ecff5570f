"""Turning measurements into something a person looks at: terminal tables, plots, HTML.

Measuring is separate from showing: these modules read a :class:`~gradhealth.probe.ProbeResult`
or a stored run, never live model state.
"""
