"""`meter serve`: a JSON API and a web page over one loaded model folder, with heat maps of where answers came from.

Needs the `serve` extra (`pip install -e ".[serve]"`: FastAPI, uvicorn, python-multipart). The model code knows
nothing of HTTP: `service.py` calls the predictor and `meter.explain`; `app.py` holds the routes.
"""
