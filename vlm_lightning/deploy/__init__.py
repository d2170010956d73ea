"""After training: export (adapter / merged model / hub), inference on new images, model cards."""
