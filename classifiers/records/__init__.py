"""Records: plain data below the workflows and the presentation. The prediction record's fields
(prediction_record.py, fields.py), the model card (model_card.py), evaluation results
(evaluation.py), metrics (metrics.py, selective.py) and explanations (explanation.py)."""
