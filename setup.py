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
    # `tfds build` imports these at start-up; `python -m data_pipelines.build` does not need them.
    extras_require={'tfds-cli': ['apache-beam', 'mlcroissant']},
)
