"""Phase-2 evidence: export each image-to-image model to ONNX with dynamic N, H, W (dynamo and
legacy exporters), run ONNX Runtime and OpenVINO at several shapes, compare with eager."""
import io, sys, time, traceback, warnings, logging
import numpy as np
import torch
from torch import nn
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
torch.set_num_threads(1)
from gendeploy.archs import esrgan, realesrgan, pix2pix, cyclegan
from gendeploy.trainer.config import ModelConfig, Arch
from gendeploy.trainer.models import build_generator
import onnxruntime as ort
import openvino as ov

torch.manual_seed(0)
sr = build_generator(ModelConfig(arch=Arch.srgan, image_size=32, scale=4, width=32, blocks=4)).eval()
MODELS = {
    # name: (module, channels, shapes to run (N, H, W))
    "srgan (trainer)": (sr, 1, [(1, 8, 8), (2, 8, 12), (3, 13, 7), (1, 64, 48)]),
    "RRDBNet x4": (esrgan.rrdbnet_tiny(4).eval(), 3, [(1, 8, 8), (2, 8, 12), (3, 13, 7), (1, 64, 48)]),
    "RRDBNet x2 (pixel unshuffle)": (esrgan.rrdbnet_tiny(2).eval(), 3, [(1, 8, 8), (2, 8, 12), (3, 14, 6), (1, 64, 48)]),
    "SRVGGNetCompact x4": (realesrgan.srvgg_tiny(4).eval(), 3, [(1, 8, 8), (2, 8, 12), (3, 13, 7), (1, 64, 48)]),
    "pix2pix U-Net depth 5": (pix2pix.unet_tiny(depth=5).eval(), 3, [(1, 32, 32), (2, 32, 64), (3, 96, 32), (1, 128, 96)]),
    "CycleGAN ResNet": (cyclegan.resnet_tiny().eval(), 3, [(1, 8, 8), (2, 8, 12), (3, 20, 12), (1, 64, 48)]),
}
core = ov.Core()

def export(model, c, exporter):
    f = io.BytesIO()
    x = torch.rand(2, c, *( (32, 64) if "U-Net" in name else (8, 12))) * 2 - 1
    if exporter == "legacy":
        torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17, input_names=["images"], output_names=["out"],
                          dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "out": {0: "n", 2: "oh", 3: "ow"}})
        return f.getvalue()
    Dim = torch.export.Dim
    dyn = ({0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC},)  # positional: any forward arg name
    prog = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dyn, input_names=["images"], output_names=["out"], verbose=False)
    return prog.model_proto.SerializeToString()

ONLY = sys.argv[1:]
for name, (model, c, shapes) in MODELS.items():
    if ONLY and not any(o in name for o in ONLY):
        continue
    for exporter in ("dynamo", "legacy"):
        t = time.perf_counter()
        try:
            blob = export(model, c, exporter)
        except Exception as e:
            msg = " ".join(str(e).split())[:220]
            print(f"{name} | {exporter} | EXPORT FAILED: {type(e).__name__}: {msg}")
            continue
        export_s = time.perf_counter() - t
        import onnx
        proto = onnx.load_from_string(blob)
        ops = sorted({n.op_type for n in proto.graph.node})
        in_shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        out_shape = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
        so = ort.SessionOptions(); so.intra_op_num_threads = 1
        sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        try:
            compiled = core.compile_model(core.read_model(blob), "CPU")
        except Exception as e:
            compiled = None; ov_err = " ".join(str(e).split())[:150]
        results = []
        for n, h, w in shapes:
            x = torch.rand(n, c, h, w) * 2 - 1
            with torch.no_grad():
                ref = model(x).numpy()
            try:
                got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
                ort_d = f"{np.abs(got - ref).max():.1e}" if got.shape == ref.shape else f"shape {got.shape}"
            except Exception as e:
                ort_d = "FAIL " + " ".join(str(e).split())[:80]
            if compiled is not None:
                try:
                    got = compiled(x.numpy())[0]
                    ov_d = f"{np.abs(got - ref).max():.1e}" if got.shape == ref.shape else f"shape {got.shape}"
                except Exception as e:
                    ov_d = "FAIL " + " ".join(str(e).split())[:80]
            else:
                ov_d = "compile FAIL " + ov_err
            results.append(f"{n}x{h}x{w}: ort {ort_d}, ov {ov_d}")
        print(f"{name} | {exporter} | {export_s:.1f}s | in {in_shape} out {out_shape} | ops {','.join(ops)} | " + "; ".join(results))
