import numpy as np
from fracscan.client import FracScanClient

image = np.zeros((512, 384), np.uint16); image[64:448, 120:260] = 3000  # or a path, bytes, a pydicom Dataset
with FracScanClient("http://localhost:8000") as client:  # or grpc://localhost:8001, or a list of URLs
    client.wait_until_ready(timeout=30)
    p = client.predict(image, region="wrist")  # DICOM files: the region comes from BodyPartExamined
    print(f"score {p.score:.3f} threshold {p.threshold:.3f} fracture={p.fracture} boxes={len(p.boxes)}")
    for result in client.predict_many(["scan1.dcm", "scan2.png"], concurrency=8):  # lazy, in input order
        print(result.to_dict() if result.ok else f"{result.source}: {result.error} ({result.kind})")
