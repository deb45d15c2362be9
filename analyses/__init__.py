"""Numbers, figures and the HTML report from probe runs (arrive with issue 4)."""
