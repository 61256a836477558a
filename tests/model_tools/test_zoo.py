import numpy as np
import onnx

from model_tools.detection import decode_blazeface, iou
from model_tools.zoo import blazeface as bf
from model_tools.zoo.ppocr import ctc_decode


def test_blazeface_finds_the_astronauts_face(blazeface):
    import onnxruntime as ort
    from skimage import data

    model = onnx.load(str(blazeface.onnx))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["regressors", "scores"]
    sess = ort.InferenceSession(str(blazeface.onnx), providers=["CPUExecutionProvider"])
    regressors, scores = sess.run(None, {"image": bf.preprocess(data.astronaut())})
    assert regressors.shape == (1, 896, 16) and scores.shape == (1, 896, 1)
    faces = decode_blazeface(regressors, scores, blazeface.extra)[0]
    assert len(faces) == 1  # one face, and no false positive on the rocket or the flag
    # Eileen Collins' face lies at about x 180-275, y 80-180 in the 512×512 photo.
    assert iou(faces[:, :4] * 512, np.array([[180, 80, 275, 180]]))[0, 0] > 0.6
    # The batch axis is symbolic: the converter's fixed batch of 1 was removed.
    many = sess.run(None, {"image": np.repeat(bf.preprocess(data.astronaut()), 3, axis=0)})[1]
    assert many.shape == (3, 896, 1)
    assert blazeface.task == "detection" and blazeface.labels == ["face"]
    assert blazeface.extra["anchors"]["strides"] == [8, 16, 16, 16]


def test_blazeface_preprocessing_is_x_over_127_5_minus_1(blazeface):
    pre = blazeface.preprocessing
    x = np.array([0.0, 127.5, 255.0])
    assert np.allclose((x * pre["scale"] - pre["mean"][0]) / pre["std"][0], [-1, 0, 1])


def test_ppocr_rec_reads_rendered_text(ppocr_rec):
    import onnxruntime as ort

    ev = np.load(ppocr_rec.data["eval"])
    sess = ort.InferenceSession(str(ppocr_rec.onnx), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"x": ev["x"][:8]})[0]
    assert probs.shape[-1] == len(ppocr_rec.labels) == 6625
    texts = ctc_decode(probs, ppocr_rec.labels)
    assert sum(t == str(g) for t, g in zip(texts, ev["text"][:8], strict=True)) >= 4
