"""The networks, read like their papers: StyleGAN2, DCGAN, e4e, DECA, ResNet/IR-SE, ArcFace, SFace, LPIPS, the FaceLandmarker/detector ports and the tflite reader."""
