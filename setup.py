from setuptools import find_packages, setup

with open('requirements.txt') as f:
  requirements = [l.strip() for l in f if l.strip() and not l.startswith('#')]

setup(
    name='mer_jax',
    version='0.1.0',
    description='Multimodal emotion recognition in JAX/Flax: five cross-modal fusion papers, '
                'one protocol.',
    packages=find_packages(include=['mer_jax', 'mer_jax.*', 'data_pipelines',
                                    'data_pipelines.*', 'experiments', 'experiments.*']),
    python_requires='>=3.10',
    install_requires=requirements,
    extras_require={
        # Dataset builds as Apache Beam pipelines (data_pipelines/README.md). It
        # pulls protobuf < 7 (6.33.x), which tensorflow-cpu 2.21 accepts.
        'beam': ['apache-beam>=2.77'],
        # `tfds build` imports these at start-up; `python -m data_pipelines.build` does not need them.
        'tfds-cli': ['apache-beam>=2.77', 'mlcroissant'],
    },
)
