"""Retrospective replay: plays fully sampled fastMRI / MRD files into a gateway as a scanner would
(ACS first, wait for the plan, then only the planned lines, optionally paced by TR), fetches the
reconstruction and scores it against the fully sampled reference. Talks to the gateway over HTTP only.
"""
