"""`sfedge serve` scaled out on Ray Serve (the [cluster] extra): config.py (the settings), engine.py
(one engine replica), backend.py (the ingress side of a request), app.py (the Ray Serve application),
run.py (`sfedge serve --ray`)."""
