"""The recall of the official METER evaluation (`compute_irtr_recall` in meter/modules/objectives.py), restated step
by step from a list of score rows: a float32 tensor of Python floats, `topk` of K along the texts (image -> text)
and along the images (text -> image), a hit where a retrieved candidate's image id equals the query's, averaged in
float32. Image ids are the images' indices here."""

from __future__ import annotations

import torch


def official_recall(scores: list[list[float]], text_image: list[int], ks=(1, 5, 10)) -> dict[str, float]:
    matrix = torch.tensor(scores)  # float32, as the official builds it from the gathered lists
    image_ids = torch.arange(matrix.shape[0])
    text_image_ids = torch.tensor(text_image)
    result = {}
    for k in ks:
        retrieved = text_image_ids[matrix.topk(k, dim=1).indices]  # (images, k): the image of each retrieved text
        result[f"i2t_r{k}"] = 100.0 * (image_ids.unsqueeze(1) == retrieved).float().max(dim=1)[0].mean().item()
    for k in ks:
        retrieved = image_ids[matrix.topk(k, dim=0).indices]  # (k, texts): each text's retrieved images
        result[f"t2i_r{k}"] = 100.0 * (text_image_ids.unsqueeze(0) == retrieved).float().max(dim=0)[0].mean().item()
    return result
